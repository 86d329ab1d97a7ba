//! Health probes: each round probes every backend of every VIP with `[vip.health]`, all
//! at once, as the check's kind says (TCP connect, HTTP GET, UDP request and reply), and
//! hands the results to the controller, where they feed the `healthy-quorum` guardrail,
//! `xlb status` and `xlb_backend_healthy`.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{
    Request,
    header::{CONNECTION, HOST, USER_AGENT},
};
use hyper_util::rt::TokioIo;
use tokio::{
    net::{TcpStream, UdpSocket},
    sync::Semaphore,
    task::JoinSet,
};

use super::state::{Shared, lock};
use crate::{
    config::{self, CheckKind, HealthCheck},
    health::Probes,
};

/// Probes in flight at once. Each holds a socket; this keeps a very large config from
/// taking the file descriptors that the API socket and `/metrics` need.
const MAX_PROBES: usize = 1024;

/// The part of a UDP reply searched for `expect`.
const UDP_REPLY_BYTES: usize = 4096;

/// One round: every probe's outcome, and how long the whole round took.
pub(crate) struct Round {
    pub probes: Probes,
    pub took: Duration,
}

/// Probes `addr` as `check` says, within `check.timeout_ms` in all.
async fn probe(addr: SocketAddr, check: &HealthCheck) -> Result<Duration, String> {
    let start = Instant::now();
    let limit = Duration::from_millis(check.timeout_ms);
    let attempt = async {
        match check.kind {
            CheckKind::Tcp => TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| format!("connect: {}", reason(&e))),
            CheckKind::Http => http(addr, check).await,
            CheckKind::Udp => udp(addr, check).await,
        }
    };
    match tokio::time::timeout(limit, attempt).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(why)) => Err(why),
        Err(_) if check.kind == CheckKind::Udp => {
            Err(format!("udp: no reply within {} ms", check.timeout_ms))
        }
        Err(_) => Err(format!("timed out after {} ms", check.timeout_ms)),
    }
}

/// `GET path` on a new connection; passes if the status is in `check.statuses()`.
async fn http(addr: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    let statuses = check
        .statuses()
        .ok_or_else(|| format!("http: status {:?} is not a range", check.status))?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {}", reason(&e)))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("http: {}", hyper_reason(&e)))?;
    let host = match (addr.ip(), addr.port()) {
        (ip, 80) => ip_literal(ip),
        (ip, port) => format!("{}:{port}", ip_literal(ip)),
    };
    let request = Request::get(check.path.as_deref().unwrap_or("/"))
        .header(HOST, host)
        .header(USER_AGENT, "xlb-health")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("http: {e}"))?;
    // The connection is driven here rather than spawned, so that a probe cut off by its
    // timeout leaves no task behind; the answer's head is all a probe reads. With
    // `Connection: close` the connection may end as it hands the answer over.
    let answer = sender.send_request(request);
    tokio::pin!(answer, conn);
    let answer = tokio::select! {
        biased;
        a = &mut answer => a,
        c = &mut conn => match c {
            Ok(()) => answer.await,
            Err(e) => return Err(format!("http: {}", hyper_reason(&e))),
        },
    };
    let response = answer.map_err(|e| format!("http: {}", hyper_reason(&e)))?;
    let code = response.status().as_u16();
    if statuses.contains(&code) {
        return Ok(());
    }
    Err(format!("HTTP {code} (expected {})", check.status_text()))
}

/// Sends `check.send` from an ephemeral port and waits for one reply, which must
/// contain `check.expect` when set.
async fn udp(addr: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let failed = |e: std::io::Error| format!("udp: {}", reason(&e));
    let socket = UdpSocket::bind(local).await.map_err(failed)?;
    // Connected: the kernel drops datagrams from anyone else and reports an ICMP error
    // about this peer on the next receive.
    socket.connect(addr).await.map_err(failed)?;
    let send = check.send.as_deref().unwrap_or("");
    socket.send(send.as_bytes()).await.map_err(failed)?;
    let mut reply = [0u8; UDP_REPLY_BYTES];
    let n = match socket.recv(&mut reply).await {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err("udp: ICMP port unreachable".into());
        }
        Err(e) => return Err(failed(e)),
    };
    match check.expect.as_deref() {
        Some(want) if !contains(&reply[..n], want.as_bytes()) => {
            Err(format!("udp: reply does not contain {want:?}"))
        }
        _ => Ok(()),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// An address as a URI host: IPv6 in brackets.
fn ip_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// An I/O error as a short reason: `connection refused`, without the `(os error 111)`.
fn reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match e.raw_os_error() {
        Some(code) => text
            .strip_suffix(&format!(" (os error {code})"))
            .unwrap_or(&text)
            .to_string(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// A hyper error with its cause (hyper's own text names only the stage).
fn hyper_reason(e: &hyper::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// One round over `vips`: every probe runs concurrently.
pub(crate) async fn round(vips: &[config::Vip]) -> Round {
    let start = Instant::now();
    let slots = Arc::new(Semaphore::new(MAX_PROBES));
    let mut probes = JoinSet::new();
    for v in vips {
        let Some(h) = &v.health else { continue };
        let check = Arc::new(h.clone());
        for b in &v.backends {
            let Ok(ip) = b.address.parse::<IpAddr>() else {
                continue;
            };
            let key = (v.name.clone(), b.name.clone());
            let addr = SocketAddr::new(ip, h.port);
            let (slots, check) = (Arc::clone(&slots), Arc::clone(&check));
            probes.spawn(async move {
                let _slot = slots.acquire_owned().await;
                (key, probe(addr, &check).await)
            });
        }
    }
    let mut results = Probes::new();
    while let Some(done) = probes.join_next().await {
        if let Ok((key, outcome)) = done {
            results.insert(key, outcome);
        }
    }
    Round {
        probes: results,
        took: start.elapsed(),
    }
}

/// Probes forever, every `interval_ms` (the shortest configured; 1 s while no VIP has
/// checks, so that a new generation's checks start within a second). Each round goes
/// through rise/fall (`health::Tracker`); when that changes which backends are held out,
/// the controller commits a `health` generation.
pub(crate) async fn checker(d: Arc<Shared>) {
    let started = tokio::time::Instant::now();
    loop {
        // The checks of the running generation, read during one short turn.
        let vips: Vec<config::Vip> = d
            .turn()
            .await
            .controller()
            .current()
            .map(|r| {
                r.config
                    .vips
                    .iter()
                    .filter(|v| v.health.is_some())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let checks: BTreeMap<String, HealthCheck> = vips
            .iter()
            .filter_map(|v| Some((v.name.clone(), v.health.clone()?)))
            .collect();
        let interval = checks.values().map(|h| h.interval_ms).min();
        let Round { probes, took } = round(&vips).await;
        tracing::debug!("health: {} probes in {took:?}", probes.len());
        *lock(&d.health_round) = Some(took);
        let now = started.elapsed();
        // A health generation writes the maps: on the blocking pool, like any apply.
        let done = d.turn().await.run(move |c| {
            let was_panic = c.panics().clone();
            let transitions = c.observe(&checks, &probes, now);
            for t in &transitions {
                if t.up {
                    tracing::info!("health: {} is up ({})", t.key(), t.why);
                } else {
                    tracing::warn!("health: {} is down ({})", t.key(), t.why);
                }
            }
            let committed = c.refresh_health(&transitions);
            for (vip, p) in c.panics() {
                if was_panic.get(vip) != Some(p) {
                    tracing::warn!("health: vip {vip}: {}", p.message());
                }
            }
            for vip in was_panic.keys().filter(|v| !c.panics().contains_key(*v)) {
                tracing::info!("health: vip {vip}: panic over");
            }
            committed
        });
        match done.await {
            // Backends going down is a warning; coming back is news.
            Ok(Ok(Some(h))) if h.changes.iter().any(|c| c.contains(" down (")) => {
                tracing::warn!(
                    "generation {} (health): {}",
                    h.generation,
                    h.changes.join("; ")
                )
            }
            Ok(Ok(Some(h))) => {
                tracing::info!(
                    "generation {} (health): {}",
                    h.generation,
                    h.changes.join("; ")
                )
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::error!("health: the generation could not be applied: {e}"),
            Err(e) => tracing::error!("health: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(interval.unwrap_or(1000).max(100))).await;
    }
}

#[cfg(test)]
mod tests;
