//! The daemon under abuse, with the real daemon and CLI: thousands of idle connections and
//! trickling clients on the API socket and on `/metrics` do not delay `xlb status` or a
//! scrape, and are cut off on time; past the connection bound a client is told so; an over-long request line is refused by name and
//! long unfinished lines do not grow the daemon's memory; a change still applies to the
//! maps meanwhile. A change whose client left while it was queued is not applied, and
//! SIGTERM lets the apply in progress answer and refuses what is queued. Accept failures
//! at the open-files limit back off instead of spinning.

#![cfg(test)]

use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    os::unix::net::UnixStream,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use xlb_lab::{
    daemon::{Daemon, VipSpec, text, xlb_bin},
    promtool_check_metrics, require_root,
    servers::HTTP_PORT,
    topology::{Topology, VIP4, in_ns},
};

const METRICS: &str = "127.0.0.1:9100";
/// The daemon's cap on a request line (`xlb::api::MAX_REQUEST_LINE`).
const MAX_LINE: usize = xlb::api::MAX_REQUEST_LINE;

/// Raises this process's soft open-files limit to its hard limit (thousands of sockets).
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer, then the same struct with soft = hard.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    assert!(
        lim.rlim_cur >= 5000,
        "open-files hard limit {}",
        lim.rlim_cur
    );
}

/// The daemon's resident memory in MB, from /proc/PID/status.
fn rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024
}

/// CPU time (user + system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the comm.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Sets the soft open-files limit of process `pid` (if `soft`); returns the old one.
fn daemon_nofile(pid: u32, soft: Option<u64>) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on our own child, reading into a valid struct.
    let rc = unsafe {
        libc::prlimit(
            pid.cast_signed(),
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    if let Some(soft) = soft {
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        // SAFETY: as above, with a valid new limit below the hard one.
        let rc = unsafe {
            libc::prlimit(
                pid.cast_signed(),
                libc::RLIMIT_NOFILE,
                &new,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    }
    old.rlim_cur
}

/// Sends `head`, then one byte of `filler` every 200 ms, until the peer closes or
/// answers; returns how long that took (panics after 20 s).
fn slowloris<S: Read + Write + Send + 'static>(
    mut s: S,
    head: &'static [u8],
    filler: u8,
) -> thread::JoinHandle<Duration> {
    thread::spawn(move || {
        let start = Instant::now();
        s.write_all(head).unwrap();
        let mut buf = [0u8; 512];
        while start.elapsed() < Duration::from_secs(20) {
            if s.write_all(&[filler]).is_err() {
                return start.elapsed();
            }
            match s.read(&mut buf) {
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                _ => return start.elapsed(),
            }
        }
        panic!("a client sending a byte every 200 ms was not cut off within 20 s");
    })
}

/// `GET /metrics` from inside the LB namespace: the status line and the body, once the
/// body is complete (as long as Content-Length says).
fn scrape(lb_ns: &str) -> (String, String) {
    in_ns(lb_ns, || {
        let mut s = TcpStream::connect(METRICS).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: xlb\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(String::from)
            })
            .and_then(|v| v.trim().parse().ok())
            .expect("a Content-Length");
        assert_eq!(body.len(), length, "an incomplete body: {out}");
        (head.lines().next().unwrap().to_string(), body.to_string())
    })
}

/// A raw API client that sends `bytes` and returns the daemon's answer line.
fn raw_request(socket: &std::path::Path, bytes: Vec<u8>) -> String {
    let s = UnixStream::connect(socket).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        #[expect(
            clippy::let_underscore_must_use,
            reason = "the daemon stops reading at the cap and closes: the rest fails to send"
        )]
        let _ = w.write_all(&bytes);
    });
    let mut answer = String::new();
    let mut r = std::io::BufReader::new(s);
    std::io::BufRead::read_line(&mut r, &mut answer).unwrap();
    writer.join().unwrap();
    answer
}

fn web() -> [VipSpec; 1] {
    [VipSpec::tcp("web", VIP4, HTTP_PORT, &[1, 1, 1])]
}

#[test]
fn idle_and_trickling_clients_delay_nobody_and_memory_stays_bounded() {
    if !require_root("idle_and_trickling_clients_delay_nobody_and_memory_stays_bounded") {
        return;
    }
    raise_nofile();
    let topo = Topology::new(1, 3);
    let mut daemon = Daemon::new(&topo);
    daemon.metrics = Some(METRICS.into());
    daemon.write_config(&web());
    daemon.start();
    let pid = daemon.pid().unwrap();
    let socket = daemon.socket();
    let lb = topo.lb.name.clone();

    // 2,000 idle connections on each listener, and one trickling client on each.
    let idle_api: Vec<UnixStream> = (0..2000)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    let (idle_http, http_slow) = in_ns(&lb, || {
        let idle: Vec<TcpStream> = (0..2000)
            .map(|_| TcpStream::connect(METRICS).unwrap())
            .collect();
        let slow = TcpStream::connect(METRICS).unwrap();
        (idle, slow)
    });
    http_slow
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let http_slow = slowloris(http_slow, b"GET /metrics HTTP/1.1\r\nX-Slow: ", b'a');
    let api_slow = UnixStream::connect(&socket).unwrap();
    api_slow
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let api_slow = slowloris(api_slow, b"{\"op\":\"status\"", b' ');

    // Operators are not delayed.
    let t = Instant::now();
    let out = daemon.xlb(&["status"]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("xlb status: {:?}", t.elapsed());
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "xlb status took {:?}",
        t.elapsed()
    );
    // A client that ends its line by shutting down its writing half is still waiting
    // for the answer, and gets it.
    let mut half = UnixStream::connect(&socket).unwrap();
    half.write_all(br#"{"op":"status"}"#).unwrap();
    half.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    half.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with(r#"{"ok":true"#), "{answer}");

    let t = Instant::now();
    let (status, body) = scrape(&lb);
    eprintln!("scrape: {:?}", t.elapsed());
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "a scrape took {:?}",
        t.elapsed()
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    for name in [
        "xlb_generation 1\n",
        "xlb_backend_packets_total{vip=\"web\",backend=\"b1\"} ",
        "xlb_backend_weight{vip=\"web\",backend=\"b3\"} 1\n",
        "xlb_vip_drops_total{vip=\"web\"} ",
        "xlb_packets_total{reason=\"forwarded\"} ",
    ] {
        assert!(body.contains(name), "no {name:?} in {body}");
    }
    promtool_check_metrics(&body);

    // A request line over the cap is refused by name, without the daemon keeping it.
    let answer = raw_request(&socket, vec![b'x'; MAX_LINE + (1 << 20)]);
    assert!(
        answer.contains(&format!("limit of {MAX_LINE} bytes")),
        "{answer}"
    );
    assert!(rss_mb(pid) < 200, "RSS {} MB", rss_mb(pid));

    // Sixteen clients each push an unfinished 15 MiB line (240 MiB in all): the daemon
    // buffers what its budget allows and the rest waits in the clients.
    let sent = Arc::new(AtomicUsize::new(0));
    let holders: Vec<_> = (0..16)
        .map(|_| {
            let mut s = UnixStream::connect(&socket).unwrap();
            let sent = Arc::clone(&sent);
            thread::spawn(move || {
                let chunk = vec![b' '; 1 << 20];
                for _ in 0..15 {
                    if s.write_all(&chunk).is_err() {
                        break;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                #[expect(clippy::let_underscore_must_use, reason = "keeps the connection until the daemon cuts it off, which ends the read either way")]
                let _ = s.read_to_end(&mut Vec::new());
            })
        })
        .collect();
    // The daemon's memory while they push: its budget (four lines at the cap) and 4,000
    // idle connections, not 240 MiB.
    let mut rss = 0;
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(100));
        rss = rss.max(rss_mb(pid));
    }
    let sent = sent.load(Ordering::Relaxed);
    eprintln!("daemon RSS at most {rss} MB with {sent} MiB of unfinished lines sent");
    // Socket buffers take a few MiB; the rest is in the daemon.
    assert!(
        sent >= 48,
        "only {sent} MiB sent: the daemon did not take its budget's worth"
    );
    assert!(rss < 200, "RSS {rss} MB with unfinished lines held");

    // Changes still apply, without waiting for the held lines' budget, and reach the
    // maps: the table the data plane uses is the new generation's, with the new shares.
    let t = Instant::now();
    daemon.xlb_ok(&["weight", "set", "web", "b1", "2"]);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "weight set took {:?}",
        t.elapsed()
    );
    let status = daemon.status();
    assert_eq!(status["generation"], 2, "{status}");
    assert_eq!(
        status["vips"][0]["generation"], 2,
        "table generation: {status}"
    );
    assert_eq!(daemon.weights("web"), [2, 1, 1]);
    let shares = daemon.table_shares("web");
    assert!((shares[0] - 0.5).abs() < 0.01, "{shares:?}");

    // Trickling clients are cut off: /metrics after its 5 s header limit, the API after
    // its 10 s request-line limit.
    let http_cut = http_slow.join().unwrap();
    let api_cut = api_slow.join().unwrap();
    eprintln!("trickling clients cut off after {http_cut:?} (/metrics), {api_cut:?} (API)");
    assert!(
        (Duration::from_secs(4)..Duration::from_secs(8)).contains(&http_cut),
        "/metrics cut a trickling client after {http_cut:?}"
    );
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(13)).contains(&api_cut),
        "the API socket cut a trickling client after {api_cut:?}"
    );
    for h in holders {
        h.join().unwrap();
    }
    drop((idle_api, idle_http));
    let out = daemon.xlb(&["status"]);
    assert!(out.status.success(), "{}", text(&out));

    // Past the bound on connections, a new one is told so at once.
    let full: Vec<UnixStream> = (0..4096)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    let mut over = UnixStream::connect(&socket).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut answer = String::new();
    over.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("4096 connections open"), "{answer}");
    drop(full);
    let t = Instant::now();
    while !daemon.xlb(&["status"]).status.success() {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "no status after the flood"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_change_whose_client_left_while_queued_is_not_applied() {
    if !require_root("a_change_whose_client_left_while_queued_is_not_applied") {
        return;
    }
    let topo = Topology::new(1, 3);
    let mut daemon = Daemon::new(&topo);
    daemon.write_config(&web());
    daemon.start();
    let xlb = |args: &[&str]| {
        Command::new(xlb_bin())
            .arg("--socket")
            .arg(daemon.socket())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // An apply that holds the controller for seconds: a new VIP with one backend that
    // answers (b1) and `backends` that have no neighbour entry, so resolving their MACs
    // waits (2 s each); it is then applied with those unresolved (no slot). The VIP says
    // it may run on one backend: that is what its real table has.
    let slow_config = |backends: usize| {
        let mut slow = daemon.render(&web());
        slow += "\n[[vip]]\nname = \"slow\"\naddress = \"198.18.0.100\"\nport = 8443\n\
                 protocol = \"tcp\"\n\n[vip.guardrails]\nmin_active_backends = 1\n\
                 max_backend_share = 1.0\n\n[[vip.backend]]\nname = \"r\"\n\
                 address = \"198.18.0.11\"\nweight = 1\n";
        for i in 0..backends {
            slow += &format!(
                "\n[[vip.backend]]\nname = \"s{i}\"\naddress = \"198.18.0.{}\"\n\
                 mac = \"neighbour\"\nweight = 1\n",
                200 + i
            );
        }
        let path = daemon.dir.path().join(format!("slow{backends}.toml"));
        std::fs::write(&path, slow).unwrap();
        path
    };
    let slow_file = slow_config(2);
    let generation = daemon.generation();

    let t = Instant::now();
    let a = xlb(&["apply", slow_file.to_str().unwrap()]);
    thread::sleep(Duration::from_millis(400));
    let mut left = xlb(&["weight", "set", "web", "b1", "2"]);
    thread::sleep(Duration::from_millis(300));
    let waits = xlb(&["weight", "set", "web", "b2", "2"]);
    thread::sleep(Duration::from_millis(300));
    // The operator gives up on the second change while the first still runs.
    left.kill().unwrap();
    left.wait().unwrap();

    let a = a.wait_with_output().unwrap();
    assert_eq!(a.status.code(), Some(0), "{}", text(&a));
    assert!(
        text(&a).contains(&format!("applied as generation {}", generation + 1)),
        "{}",
        text(&a)
    );
    assert!(
        t.elapsed() > Duration::from_millis(1500),
        "the slow apply took only {:?}: nothing was queued behind it",
        t.elapsed()
    );
    let waits = waits.wait_with_output().unwrap();
    assert!(waits.status.success(), "{}", text(&waits));
    let committed = generation + 2;
    assert!(
        text(&waits).contains(&format!("applied as generation {committed}")),
        "{}",
        text(&waits)
    );

    // Only the change whose client waited was applied, and the history says so.
    assert_eq!(daemon.weights("web"), [1, 2, 1]);
    assert_eq!(daemon.generation(), committed);
    let history: serde_json::Value =
        serde_json::from_str(&daemon.xlb_ok(&["history", "--json"])).unwrap();
    let records = history.as_array().unwrap();
    assert_eq!(records.len() as u64, committed, "{history}");
    let last = records.last().unwrap();
    assert_eq!(last["generation"], committed);
    assert_eq!(last["source"]["command"], "weight set web b2 2", "{last}");
    let log = daemon.log();
    assert!(
        log.contains("weight set web b1 2: cancelled: the client went away while it was queued"),
        "{log}"
    );
    assert!(
        log.contains("weight set web b2 2: applied as generation"),
        "{log}"
    );

    // SIGTERM during a slow apply (one more unresolvable backend): it finishes and its
    // client gets the real answer; the change queued behind it is refused, not applied.
    let a = xlb(&["apply", slow_config(3).to_str().unwrap()]);
    thread::sleep(Duration::from_millis(400));
    let queued = xlb(&["weight", "set", "web", "b3", "2"]);
    thread::sleep(Duration::from_millis(300));
    daemon.stop_with(libc::SIGTERM);
    let a = a.wait_with_output().unwrap();
    assert!(
        text(&a).contains(&format!("applied as generation {}", committed + 1)),
        "{}",
        text(&a)
    );
    let queued = queued.wait_with_output().unwrap();
    assert_eq!(queued.status.code(), Some(2), "{}", text(&queued));
    assert!(
        text(&queued).contains("the daemon is stopping; nothing was changed"),
        "{}",
        text(&queued)
    );
    assert_eq!(daemon.history_len() as u64, committed + 1);
    assert!(
        daemon
            .log()
            .contains("SIGTERM: stopped; the data plane keeps forwarding"),
        "{}",
        daemon.log()
    );
}

#[test]
fn accept_failures_at_the_open_files_limit_back_off() {
    if !require_root("accept_failures_at_the_open_files_limit_back_off") {
        return;
    }
    let topo = Topology::new(1, 3);
    let mut daemon = Daemon::new(&topo);
    daemon.write_config(&web());
    daemon.start();
    let pid = daemon.pid().unwrap();
    assert!(
        daemon.log().contains("open files limit: "),
        "{}",
        daemon.log()
    );

    // Leave the daemon 20 free descriptors (a lower soft limit: raising a hard limit
    // again would need CAP_SYS_RESOURCE), then connect 60 clients.
    let limit = daemon_nofile(pid, None);
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    daemon_nofile(pid, Some(open + 20));
    let clients: Vec<UnixStream> = (0..60)
        .map(|_| UnixStream::connect(daemon.socket()).unwrap())
        .collect();
    thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(pid);
    thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - before;
    // A loop retrying accept at once would use the whole second (100 ticks).
    assert!(used < 20, "{used} ticks of CPU in 1 s at EMFILE");

    // Once descriptors are free again, the daemon serves.
    daemon_nofile(pid, Some(limit));
    drop(clients);
    let out = daemon.xlb(&["status"]);
    assert!(out.status.success(), "{}", text(&out));
    // A burst is over after a second without failures; the next accept says so.
    thread::sleep(Duration::from_millis(1100));
    daemon.xlb_ok(&["status"]);
    let log = daemon.log();
    assert_eq!(
        log.matches("accept failed").count(),
        1,
        "one line per burst: {log}"
    );
    assert!(log.contains("Too many open files"), "{log}");
    assert!(log.contains("recovered after"), "{log}");
}
