//! Real clients for the lab servers: short HTTP connections, keep-alive HTTP, long-lived
//! echo connections and UDP requests, plus a bounded background load that counts every
//! failure, and timed request loops that record when each request started, from which
//! port, and who answered (`Requests`). All of them must run on a thread inside a client namespace (`topology::in_ns`).

use std::{
    collections::BTreeMap,
    io::{self, BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    servers::{ECHO_PORT, HTTP_PORT},
    topology::enter,
};

const TIMEOUT: Duration = Duration::from_secs(3);

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// An HTTP/1.1 connection that stays open for several requests.
pub struct Http {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Http {
    pub fn connect(vip: IpAddr) -> io::Result<Http> {
        Http::over(connect(SocketAddr::new(vip, HTTP_PORT))?)
    }

    /// An HTTP connection over `stream`, already connected.
    fn over(stream: TcpStream) -> io::Result<Http> {
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Http { stream, reader })
    }

    /// The client side of this connection (what `xlb explain` takes).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    /// One GET; returns the backend that answered.
    pub fn get(&mut self, close: bool) -> io::Result<String> {
        let conn = if close { "close" } else { "keep-alive" };
        // One write: pieces of a request would wait on Nagle and delayed ACKs.
        let request = format!("GET / HTTP/1.1\r\nHost: xlb-lab\r\nConnection: {conn}\r\n\r\n");
        self.stream.write_all(request.as_bytes())?;
        let mut status = String::new();
        self.reader.read_line(&mut status)?;
        if !status.starts_with("HTTP/1.1 200") {
            return Err(bad(format!("bad status line {status:?}")));
        }
        let mut length = None;
        loop {
            let mut h = String::new();
            if self.reader.read_line(&mut h)? == 0 {
                return Err(bad("connection closed inside the headers".into()));
            }
            let h = h.trim();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("Content-Length: ") {
                length = v.parse::<usize>().ok();
            }
        }
        let length = length.ok_or_else(|| bad("no Content-Length".into()))?;
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body)?;
        Ok(String::from_utf8_lossy(&body).trim().to_string())
    }
}

/// One request on a new connection: (client source port, backend). The client closes
/// first, so its side keeps the 5-tuple in TIME_WAIT and the next connection gets a new
/// source port: each call is exactly one new flow for the load balancer.
pub fn http_once(vip: IpAddr) -> io::Result<(u16, String)> {
    let mut c = Http::connect(vip)?;
    let port = c.local_addr()?.port();
    let who = c.get(false)?;
    drop(c);
    Ok((port, who))
}

/// A long-lived echo connection that must stay on the backend that accepted it.
pub struct Echo {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    pub backend: String,
    pub local: SocketAddr,
}

impl Echo {
    pub fn open(vip: IpAddr) -> io::Result<Echo> {
        let s = connect(SocketAddr::new(vip, ECHO_PORT))?;
        let local = s.local_addr()?;
        let mut reader = BufReader::new(s.try_clone()?);
        let mut backend = String::new();
        reader.read_line(&mut backend)?;
        Ok(Echo {
            reader,
            writer: s,
            backend: backend.trim().to_string(),
            local,
        })
    }

    /// Sends a line; Ok if the same backend echoes it.
    pub fn ping(&mut self, what: &str) -> io::Result<()> {
        self.writer.write_all(format!("{what}\n").as_bytes())?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let want = format!("{} {what}", self.backend);
        if line.trim() != want {
            return Err(bad(format!(
                "established connection from {} moved or broke: sent {what:?}, got {:?}, \
                 expected {want:?}",
                self.local,
                line.trim()
            )));
        }
        Ok(())
    }
}

/// One UDP request from a fresh socket: (source port, backend). Retries a lost datagram
/// up to 3 times (UDP has no retransmission of its own).
pub fn udp_once(vip: IpAddr, payload: &str) -> io::Result<(u16, String)> {
    let any: IpAddr = if vip.is_ipv4() {
        "0.0.0.0".parse().expect("literal")
    } else {
        "::".parse().expect("literal")
    };
    let sock = UdpSocket::bind(SocketAddr::new(any, 0))?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    sock.connect(SocketAddr::new(vip, ECHO_PORT))?;
    let mut buf = [0u8; 2048];
    let mut last = None;
    for _ in 0..3 {
        sock.send(payload.as_bytes())?;
        match sock.recv(&mut buf) {
            Ok(n) => {
                let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
                let (backend, echoed) = reply
                    .split_once(' ')
                    .ok_or_else(|| bad(format!("bad reply {reply:?}")))?;
                if echoed != payload {
                    return Err(bad(format!("echo mismatch: {reply:?}")));
                }
                return Ok((sock.local_addr()?.port(), backend.to_string()));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| bad("no reply".into())))
}

/// `n` short HTTP connections: connections per backend. Panics on any failure.
pub fn http_many(vip: IpAddr, n: u32) -> BTreeMap<String, u32> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut count = BTreeMap::new();
    for i in 0..n {
        assert!(
            Instant::now() < deadline,
            "traffic over its time bound at {i}"
        );
        let (_, who) = http_once(vip).unwrap_or_else(|e| panic!("connection {i} to {vip}: {e}"));
        *count.entry(who).or_insert(0) += 1;
    }
    count
}

/// Checks that new flows counted per backend name follow `table`, the table shares of
/// b1..bN in order, within `tolerance` (a fraction); the error names the first backend
/// that is off, with both shares.
pub fn follows<N: Copy + Into<u64>>(
    count: &BTreeMap<String, N>,
    table: &[f64],
    tolerance: f64,
) -> Result<(), String> {
    let total: u64 = count.values().map(|&n| n.into()).sum();
    for (i, want) in table.iter().enumerate() {
        let name = crate::topology::backend_name(i);
        let n: u64 = count.get(&name).map_or(0, |&n| n.into());
        let got = n as f64 / total.max(1) as f64;
        if (got - want).abs() > tolerance {
            return Err(format!(
                "{name}: {:.1}% of {total} new flows, table share {:.1}%",
                got * 100.0,
                want * 100.0
            ));
        }
    }
    Ok(())
}

/// What a background load saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Successful requests per backend: new connections.
    pub short: BTreeMap<String, u64>,
    /// Successful requests on the keep-alive connection.
    pub keepalive: u64,
    /// Every failed request, with its error.
    pub failures: Vec<String>,
}

impl LoadReport {
    pub fn requests(&self) -> u64 {
        self.short.values().sum::<u64>() + self.keepalive
    }
}

/// A continuous request loop from a client namespace: alternately a short connection
/// and a request on one keep-alive connection (reopened when the server closes it).
/// Bounded: stops at `stop`, at `max_requests`, or after `max_time`.
pub struct Load {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<LoadReport>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(client_ns: &str, vip: IpAddr, max_requests: u64, max_time: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let (ns, s, r) = (
            client_ns.to_string(),
            Arc::clone(&stop),
            Arc::clone(&report),
        );
        let thread = thread::spawn(move || {
            enter(&ns);
            let deadline = Instant::now() + max_time;
            let mut keep: Option<Http> = None;
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) && n < max_requests && Instant::now() < deadline {
                n += 1;
                if n.is_multiple_of(2) {
                    match http_once(vip) {
                        Ok((_, who)) => *lock(&r).short.entry(who).or_default() += 1,
                        Err(e) => lock(&r).failures.push(format!("short request {n}: {e}")),
                    }
                } else {
                    let result = match keep.as_mut() {
                        Some(c) => c.get(false),
                        None => Http::connect(vip).and_then(|mut c| {
                            let who = c.get(false);
                            keep = Some(c);
                            who
                        }),
                    };
                    match result {
                        Ok(_) => lock(&r).keepalive += 1,
                        Err(e) => {
                            // Where from: `xlb explain VIP ADDRESS` places the flow.
                            let from = keep
                                .take()
                                .and_then(|c| c.local_addr().ok())
                                .map_or_else(String::new, |a| format!(" from {a}"));
                            lock(&r)
                                .failures
                                .push(format!("keep-alive request {n}{from}: {e}"));
                        }
                    }
                }
            }
        });
        Load {
            stop,
            report,
            thread: Some(thread),
        }
    }

    /// A copy of what the load has seen so far.
    pub fn report(&self) -> LoadReport {
        lock(&self.report).clone()
    }

    /// Stops the load and returns its report.
    pub fn finish(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        }
        self.report()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            #[expect(
                clippy::let_underscore_must_use,
                reason = "dropped while unwinding or early: a client thread's panic must not abort the test; `finish` re-raises it"
            )]
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One request of a `Requests` loop.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// When it started, on the loop's clock (`Requests::now`).
    pub at: Duration,
    /// The client's source port: bound before connecting, so a failed request is known by
    /// its flow too (`xlb explain VIP CLIENT:PORT` finds its slot).
    pub port: u16,
    /// The backend that answered, or why the request failed.
    pub outcome: Result<String, String>,
    /// How long it took to answer or fail.
    pub took: Duration,
}

/// What a `Requests` loop saw.
#[derive(Clone, Debug, Default)]
pub struct Attempts(pub Vec<Attempt>);

impl Attempts {
    pub fn failures(&self) -> impl Iterator<Item = &Attempt> {
        self.0.iter().filter(|a| a.outcome.is_err())
    }

    /// Failed requests that started at or after `from`.
    pub fn failures_from(&self, from: Duration) -> Vec<&Attempt> {
        self.failures().filter(|a| a.at >= from).collect()
    }

    /// The start of the last failed request, if one failed.
    pub fn last_failure(&self) -> Option<Duration> {
        self.failures().map(|a| a.at).max()
    }

    /// Answered requests per backend among those that started within `from..to`.
    pub fn answered(&self, from: Duration, to: Duration) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for a in self.0.iter().filter(|a| (from..to).contains(&a.at)) {
            if let Ok(b) = &a.outcome {
                *out.entry(b.clone()).or_default() += 1;
            }
        }
        out
    }

    /// The start of the first request `backend` answered at or after `from`.
    pub fn first_answer_from(&self, backend: &str, from: Duration) -> Option<Duration> {
        self.0
            .iter()
            .filter(|a| a.at >= from && a.outcome.as_deref() == Ok(backend))
            .map(|a| a.at)
            .min()
    }
}

/// Closed loops of short HTTP requests (one per connection) from a client namespace,
/// each request timestamped and bound to its source port first. A socket whose request
/// failed is kept open until the loop ends, so no later request reuses its port (and
/// perhaps leaves a flow entry that `xlb explain` would report for it).
pub struct Requests {
    started: Instant,
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Requests {
    /// `loops` loops to `vip`:80 from namespace `client_ns`, each pausing `pause` after a
    /// request; connecting and each read give up after `timeout`. At most `max_requests`
    /// per loop and `max_time` in all.
    pub fn start(
        client_ns: &str,
        vip: IpAddr,
        loops: usize,
        pause: Duration,
        timeout: Duration,
        max_requests: u64,
        max_time: Duration,
    ) -> Requests {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..loops)
            .map(|_| {
                let (ns, stop, attempts) = (
                    client_ns.to_string(),
                    Arc::clone(&stop),
                    Arc::clone(&attempts),
                );
                thread::spawn(move || {
                    enter(&ns);
                    let deadline = started + max_time;
                    let mut kept = Vec::new();
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed)
                        && n < max_requests
                        && Instant::now() < deadline
                    {
                        n += 1;
                        let at = started.elapsed();
                        let (port, outcome, failed) = bound_request(vip, timeout);
                        kept.extend(failed);
                        let took = started.elapsed().saturating_sub(at);
                        lock(&attempts).push(Attempt {
                            at,
                            port,
                            outcome,
                            took,
                        });
                        thread::sleep(pause);
                    }
                })
            })
            .collect();
        Requests {
            started,
            stop,
            attempts,
            threads,
        }
    }

    /// The loop's clock: time since it started.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// A copy of the attempts so far.
    pub fn attempts(&self) -> Attempts {
        Attempts(lock(&self.attempts).clone())
    }

    /// Stops the loops and returns every attempt, in the order they ended.
    pub fn finish(mut self) -> Attempts {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        }
        self.attempts()
    }
}

impl Drop for Requests {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            #[expect(
                clippy::let_underscore_must_use,
                reason = "dropped while unwinding or early: a client thread's panic must not abort the test; `finish` re-raises it"
            )]
            let _ = t.join();
        }
    }
}

/// The next source port a `Requests` loop tries, process-wide (1024 plus this, modulo
/// the rest of the range).
static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

/// A TCP socket of `vip`'s family bound to a port of its own. The port is picked here,
/// not by the kernel: a port bound by number stays bound while the socket is open, also
/// after a refused connect, whereas one the kernel picked for `bind(0)` is released when
/// the connect fails (it lacks `SOCK_BINDPORT_LOCK`) and could go to a later request.
fn bound_socket(vip: IpAddr) -> io::Result<(u16, socket2::Socket)> {
    use socket2::{Domain, Socket, Type};
    let (domain, any): (Domain, IpAddr) = if vip.is_ipv4() {
        (Domain::IPV4, [0u8; 4].into())
    } else {
        (Domain::IPV6, [0u8; 16].into())
    };
    let mut last = None;
    // Ports in use (TIME_WAIT, a kept failure, another client's connection) are skipped.
    for _ in 0..1000 {
        let port = 1024 + (NEXT_PORT.fetch_add(1, Ordering::Relaxed) % (65536 - 1024)) as u16;
        let sock = Socket::new(domain, Type::STREAM, None)?;
        match sock.bind(&SocketAddr::new(any, port).into()) {
            Ok(()) => return Ok((port, sock)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| bad("no free port".into())))
}

/// One GET on a new connection from a port bound first: (port, backend or error, the
/// socket when the request failed).
fn bound_request(
    vip: IpAddr,
    timeout: Duration,
) -> (u16, Result<String, String>, Option<socket2::Socket>) {
    let (port, sock) = match bound_socket(vip) {
        Ok(p) => p,
        Err(e) => return (0, Err(format!("socket: {e}")), None),
    };
    if let Err(e) = sock.connect_timeout(&SocketAddr::new(vip, HTTP_PORT).into(), timeout) {
        // A connect that timed out is still trying: its retransmitted SYN would be a new
        // flow that may reach another backend and leave a flow entry. A shutdown of
        // a socket in SYN_SENT disconnects it (`inet_shutdown`), and the port stays bound.
        #[expect(
            clippy::let_underscore_must_use,
            reason = "a socket that is no longer connecting has nothing to shut down"
        )]
        let _ = sock.shutdown(std::net::Shutdown::Both);
        return (port, Err(format!("connect: {e}")), Some(sock));
    }
    let stream: TcpStream = sock.into();
    let answer = stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_nodelay(true))
        .and_then(|()| Http::over(stream.try_clone()?))
        .and_then(|mut c| c.get(false));
    match answer {
        Ok(who) => (port, Ok(who), None),
        Err(e) => (port, Err(format!("request: {e}")), Some(stream.into())),
    }
}
