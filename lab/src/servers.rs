//! Real servers on the backends, each telling the client who answered:
//! - HTTP/1.1 on port 80 (keep-alive unless the client says `Connection: close`); the
//!   body is the backend's name;
//! - a TCP line echo on port 7: the backend's name on connect, then `<name> <line>` per
//!   line (for long-lived connections);
//! - a UDP echo on port 7: `<name> <payload>`, on the VIPs and on the backend's own
//!   addresses (where health probes go; those datagrams are not counted);
//! - a TCP discard on port 9 (RFC 863): reads until end of stream and counts the bytes,
//!   then closes (the benchmarks' segment stream ends there).
//!
//! TCP listens dual-stack on `[::]`, so one server answers both VIPs. UDP binds each VIP
//! itself: a reply from a socket bound to `[::]` would leave from the backend's own
//! address, and the client (which sent to the VIP) would discard it. Each server counts
//! what it accepted, so tests can compare the servers' own counts with the load balancer's.
//! One backend's servers can be stopped and started again (`stop_backend`), closing
//! their listening sockets as a crashed service would.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
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

/// The servers of every backend; stopped and joined on drop.
pub struct Servers {
    backends: Vec<Backend>,
    /// Per backend, in topology order; kept across a stop and start.
    pub counts: Vec<Arc<Counts>>,
}

/// One backend's server thread, while it runs.
struct Backend {
    ns: String,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Servers {
    /// Starts the servers in every backend namespace of `topo`; returns when all listen.
    pub fn start(topo: &Topology) -> Servers {
        let mut servers = Servers {
            backends: topo
                .backends
                .iter()
                .map(|ns| Backend {
                    ns: ns.name.clone(),
                    stop: Arc::new(AtomicBool::new(false)),
                    thread: None,
                })
                .collect(),
            counts: topo
                .backends
                .iter()
                .map(|_| Arc::new(Counts::default()))
                .collect(),
        };
        for i in 0..servers.backends.len() {
            servers.start_backend(i);
        }
        servers
    }

    /// Starts backend `i`'s servers (again, after `stop_backend`); returns when they
    /// listen.
    pub fn start_backend(&mut self, i: usize) {
        let b = &mut self.backends[i];
        assert!(b.thread.is_none(), "backend {i}'s servers already run");
        b.stop = Arc::new(AtomicBool::new(false));
        let (ns, stop, c) = (b.ns.clone(), b.stop.clone(), self.counts[i].clone());
        let (tx, rx) = std::sync::mpsc::channel();
        b.thread = Some(thread::spawn(move || {
            enter(&ns);
            let http = TcpListener::bind(("::", HTTP_PORT)).expect("bind [::]:80");
            let echo = TcpListener::bind(("::", ECHO_PORT)).expect("bind [::]:7");
            let discard = TcpListener::bind(("::", DISCARD_PORT)).expect("bind [::]:9");
            let udp = |addr: String| {
                let s = UdpSocket::bind((addr.as_str(), ECHO_PORT)).expect("bind udp :7");
                s.set_nonblocking(true).expect("nonblocking udp");
                s
            };
            let vips = [VIP4, VIP6].map(|a| udp(a.into()));
            let own = [backend4(i), backend6(i)].map(udp);
            for l in [&http, &echo, &discard] {
                l.set_nonblocking(true).expect("nonblocking listener");
            }
            let _ = tx.send(());
            let name = backend_name(i);
            serve(&name, [&http, &echo, &discard], [&vips, &own], &c, &stop);
        }));
        rx.recv().expect("server thread started");
    }

    /// Stops backend `i`'s servers: their listening and UDP sockets close, so connects
    /// are refused and datagrams draw ICMP port unreachable. Connections already open
    /// keep their own threads until the client closes them.
    pub fn stop_backend(&mut self, i: usize) {
        let b = &mut self.backends[i];
        b.stop.store(true, Ordering::Relaxed);
        if let Some(t) = b.thread.take() {
            let _ = t.join();
        }
    }

    /// HTTP connections backend `i` accepted.
    pub fn http_connections(&self, i: usize) -> u64 {
        self.counts[i].http_connections.load(Ordering::Relaxed)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for b in &self.backends {
            b.stop.store(true, Ordering::Relaxed);
        }
        for i in 0..self.backends.len() {
            self.stop_backend(i);
        }
    }
}

fn serve(
    name: &str,
    [http, echo, discard]: [&TcpListener; 3],
    [vips, own]: [&[UdpSocket; 2]; 2],
    counts: &Arc<Counts>,
    stop: &AtomicBool,
) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let mut idle = true;
        if let Ok((conn, _)) = http.accept() {
            idle = false;
            counts.http_connections.fetch_add(1, Ordering::Relaxed);
            let (name, counts) = (name.to_string(), counts.clone());
            thread::spawn(move || http_conn(&name, conn, &counts));
        }
        if let Ok((conn, _)) = echo.accept() {
            idle = false;
            counts.echo_connections.fetch_add(1, Ordering::Relaxed);
            let name = name.to_string();
            thread::spawn(move || echo_conn(&name, conn));
        }
        if let Ok((conn, _)) = discard.accept() {
            idle = false;
            let counts = counts.clone();
            thread::spawn(move || discard_conn(conn, &counts));
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
                let _ = sock.send_to(&reply, from);
            }
        }
        if idle {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

fn http_conn(name: &str, conn: TcpStream, counts: &Counts) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
    let Ok(mut w) = conn.try_clone() else { return };
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

fn echo_conn(name: &str, conn: TcpStream) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(300)));
    let Ok(mut w) = conn.try_clone() else { return };
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

fn discard_conn(mut conn: TcpStream, counts: &Counts) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n @ 1..) = conn.read(&mut buf) {
        counts
            .discarded_bytes
            .fetch_add(n as u64, Ordering::Relaxed);
    }
}
