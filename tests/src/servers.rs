//! Real servers on the backends, each telling the client who answered:
//! - HTTP/1.1 on port 80 (keep-alive unless the client says `Connection: close`); the
//!   body is the backend's name;
//! - a TCP line echo on port 7: the backend's name on connect, then `<name> <line>` per
//!   line (for long-lived connections);
//! - a UDP echo on port 7: `<name> <payload>`, on the VIPs (counted) and on the
//!   backend's own addresses (for health checks; not counted);
//! - a TCP discard on port 9 (RFC 863): reads until end of stream and counts the bytes,
//!   then closes (the benchmarks' segment stream ends there).
//!
//! A backend's servers can be killed and restarted alone, as a process that dies (its
//! listeners close and its open connections are cut) and comes back.
//!
//! TCP listens dual-stack on `[::]`, so one server answers both VIPs. UDP binds each VIP
//! itself: a reply from a socket bound to `[::]` would leave from the backend's own
//! address, and the client (which sent to the VIP) would discard it. Each server counts
//! what it accepted, so tests can compare the servers' own counts with the load balancer's.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use crate::topology::{Topology, VIP4, VIP6, backend_name, backend4, backend6, enter};

pub const HTTP_PORT: u16 = 80;
pub const ECHO_PORT: u16 = 7;
pub const DISCARD_PORT: u16 = 9;

/// What one backend's servers accepted.
#[derive(Debug, Default)]
pub struct Counts {
    pub http_connections: AtomicU64,
    pub http_requests: AtomicU64,
    pub echo_connections: AtomicU64,
    pub udp_datagrams: AtomicU64,
    /// Bytes the discard server read, counted as they arrive.
    pub discarded_bytes: AtomicU64,
}

/// Where one backend's servers run: its namespace, its name (what it answers with) and
/// its own IPv4 and IPv6 addresses.
#[derive(Clone, Debug)]
pub struct Site {
    pub ns: String,
    pub name: String,
    pub own: [String; 2],
}

/// The servers of every backend; stopped and joined on drop. Each backend's servers can
/// also be killed and restarted alone (`kill`, `restart`), as a backend process that dies
/// and comes back.
pub struct Servers {
    backends: Vec<Backend>,
    /// Per backend, in topology order.
    pub counts: Vec<Arc<Counts>>,
}

/// Open connections of one backend's servers, so that a kill can cut them.
type Open = Arc<Mutex<Vec<Weak<TcpStream>>>>;

/// One backend's servers: one thread with its listeners, stopped by its own flag.
struct Backend {
    ns: String,
    name: String,
    /// The backend's own IPv4 and IPv6 addresses.
    own: [String; 2],
    /// The IPv4 and IPv6 VIPs the UDP echo binds.
    vips: [String; 2],
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    open: Open,
}

impl Backend {
    /// Starts the servers; returns when they listen.
    fn start(&mut self) {
        assert!(self.thread.is_none(), "{}'s servers already run", self.name);
        self.stop = Arc::new(AtomicBool::new(false));
        let (ns, name, stop) = (self.ns.clone(), self.name.clone(), Arc::clone(&self.stop));
        let (own, vips) = (self.own.clone(), self.vips.clone());
        let (counts, open) = (Arc::clone(&self.counts), Arc::clone(&self.open));
        let (tx, rx) = std::sync::mpsc::channel();
        self.thread = Some(thread::spawn(move || {
            enter(&ns);
            let http = TcpListener::bind(("::", HTTP_PORT)).expect("bind [::]:80");
            let echo = TcpListener::bind(("::", ECHO_PORT)).expect("bind [::]:7");
            let discard = TcpListener::bind(("::", DISCARD_PORT)).expect("bind [::]:9");
            let udp = |addr: &str| {
                let s = UdpSocket::bind((addr, ECHO_PORT)).expect("bind udp :7");
                s.set_nonblocking(true).expect("nonblocking udp");
                s
            };
            let vips = vips.each_ref().map(|a| udp(a));
            let own = own.each_ref().map(|a| udp(a));
            for l in [&http, &echo, &discard] {
                l.set_nonblocking(true).expect("nonblocking listener");
            }
            #[expect(
                clippy::let_underscore_must_use,
                reason = "the receiver waits right after the spawn; it is gone only if that caller panicked"
            )]
            let _ = tx.send(());
            let sockets = ([&http, &echo, &discard], [&vips, &own]);
            serve(&name, sockets, &counts, &open, &stop);
        }));
        rx.recv().expect("server thread started");
    }

    /// Stops the servers as a dying process would: the listeners close (new connections
    /// are refused) and every open connection is cut.
    fn kill(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            #[expect(
                clippy::let_underscore_must_use,
                reason = "a server thread that panicked has printed why; killing the servers goes on"
            )]
            let _ = t.join();
        }
        for conn in lock(&self.open).drain(..).filter_map(|c| c.upgrade()) {
            #[expect(
                clippy::let_underscore_must_use,
                reason = "a connection the client closed already is as cut as this wants"
            )]
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Servers {
    /// Starts the servers in every backend namespace of `topo`; returns when all listen.
    pub fn start(topo: &Topology) -> Servers {
        let sites: Vec<Site> = topo
            .backends
            .iter()
            .enumerate()
            .map(|(i, ns)| Site {
                ns: ns.name.clone(),
                name: backend_name(i),
                own: [backend4(i), backend6(i)],
            })
            .collect();
        Servers::start_on(&sites, [VIP4, VIP6])
    }

    /// Starts the servers on `sites`, the UDP echo on `vips` (IPv4, IPv6); returns when
    /// all listen.
    pub fn start_on(sites: &[Site], vips: [&str; 2]) -> Servers {
        let mut backends = Vec::new();
        for site in sites {
            let mut b = Backend {
                ns: site.ns.clone(),
                name: site.name.clone(),
                own: site.own.clone(),
                vips: vips.map(String::from),
                counts: Arc::new(Counts::default()),
                stop: Arc::new(AtomicBool::new(false)),
                thread: None,
                open: Open::default(),
            };
            b.start();
            backends.push(b);
        }
        let counts = backends.iter().map(|b| Arc::clone(&b.counts)).collect();
        Servers { backends, counts }
    }

    /// HTTP connections backend `i` accepted.
    pub fn http_connections(&self, i: usize) -> u64 {
        self.counts[i].http_connections.load(Ordering::Relaxed)
    }

    /// Kills backend `i`'s servers: connections to it are refused and the open ones cut,
    /// until `restart`.
    pub fn kill(&mut self, i: usize) {
        self.backends[i].kill();
    }

    /// Starts backend `i`'s servers again after `kill`; returns when they listen.
    pub fn restart(&mut self, i: usize) {
        self.backends[i].start();
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for b in &mut self.backends {
            b.kill();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps `conn` where a kill can cut it (dropping those already closed), and hands it
/// to `serve` on a thread of its own.
fn spawn_conn(conn: TcpStream, open: &Open, serve: impl FnOnce(&TcpStream) + Send + 'static) {
    let conn = Arc::new(conn);
    {
        let mut open = lock(open);
        open.retain(|c| c.strong_count() > 0);
        open.push(Arc::downgrade(&conn));
    }
    thread::spawn(move || serve(&conn));
}

fn serve(
    name: &str,
    ([http, echo, discard], [vips, own]): ([&TcpListener; 3], [&[UdpSocket; 2]; 2]),
    counts: &Arc<Counts>,
    open: &Open,
    stop: &AtomicBool,
) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let mut idle = true;
        if let Ok((conn, _)) = http.accept() {
            idle = false;
            counts.http_connections.fetch_add(1, Ordering::Relaxed);
            let (name, counts) = (name.to_string(), Arc::clone(counts));
            spawn_conn(conn, open, move |c| http_conn(&name, c, &counts));
        }
        if let Ok((conn, _)) = echo.accept() {
            idle = false;
            counts.echo_connections.fetch_add(1, Ordering::Relaxed);
            let name = name.to_string();
            spawn_conn(conn, open, move |c| echo_conn(&name, c));
        }
        if let Ok((conn, _)) = discard.accept() {
            idle = false;
            let counts = Arc::clone(counts);
            spawn_conn(conn, open, move |c| discard_conn(c, &counts));
        }
        // Only what came through the load balancer (to a VIP) is counted.
        let udp = vips.iter().map(|s| (s, true));
        for (sock, counted) in udp.chain(own.iter().map(|s| (s, false))) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                idle = false;
                if counted {
                    counts.udp_datagrams.fetch_add(1, Ordering::Relaxed);
                }
                let mut reply = format!("{name} ").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                #[expect(
                    clippy::let_underscore_must_use,
                    reason = "a lost reply is for the client to notice, as a timeout"
                )]
                let _ = sock.send_to(&reply, from);
            }
        }
        if idle {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Makes an accepted connection blocking, with `read_timeout` and, with `nodelay`, no
/// Nagle delay.
#[expect(
    clippy::let_underscore_must_use,
    reason = "accepted sockets are blocking already, and a missing option only slows a test"
)]
fn set_options(conn: &TcpStream, nodelay: bool, read_timeout: Duration) {
    let _ = conn.set_nonblocking(false);
    if nodelay {
        let _ = conn.set_nodelay(true);
    }
    let _ = conn.set_read_timeout(Some(read_timeout));
}

fn http_conn(name: &str, conn: &TcpStream, counts: &Counts) {
    set_options(conn, true, Duration::from_secs(120));
    let mut w = conn;
    let mut r = BufReader::new(conn);
    loop {
        let mut close = false;
        let mut line = String::new();
        // Request line, headers, blank line. EOF or an error ends the connection.
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            let mut header = String::new();
            match r.read_line(&mut header) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let h = header.trim();
            if h.is_empty() {
                break;
            }
            if h.eq_ignore_ascii_case("connection: close") {
                close = true;
            }
        }
        counts.http_requests.fetch_add(1, Ordering::Relaxed);
        let body = format!("{name}\n");
        let conn_header = if close { "close" } else { "keep-alive" };
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {conn_header}\r\n\r\n{body}",
            body.len()
        );
        if w.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}

fn echo_conn(name: &str, conn: &TcpStream) {
    set_options(conn, true, Duration::from_secs(300));
    let mut w = conn;
    if w.write_all(format!("{name}\n").as_bytes()).is_err() {
        return;
    }
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
        if w.write_all(format!("{name} {}\n", line.trim_end()).as_bytes())
            .is_err()
        {
            return;
        }
        line.clear();
    }
}

fn discard_conn(mut conn: &TcpStream, counts: &Counts) {
    set_options(conn, false, Duration::from_secs(30));
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n @ 1..) = conn.read(&mut buf) {
        counts
            .discarded_bytes
            .fetch_add(n as u64, Ordering::Relaxed);
    }
}
