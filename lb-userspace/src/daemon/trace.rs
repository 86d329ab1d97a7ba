//! `xlb trace`, the daemon's side. The program reports decisions through aya-log only
//! while a trace client is attached: the first client turns the kernel's trace on, the
//! last one to leave turns it off, and in between the daemon renews a lease each second,
//! so a daemon that dies stops the trace within `trace::LEASE`. Records arrive on aya-log's
//! ring buffer (`reader`) and go to every client through a broadcast channel; each
//! client gets those its own filter matches, named with the running generation's names.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aya_log::EbpfLogger;
use tokio::{
    io::{AsyncWriteExt, unix::AsyncFd},
    net::UnixStream,
    sync::broadcast::{self, error::RecvError},
};
use tracing::{debug, info, warn};

use super::state::{Shared, lock, stopped};
use crate::{
    api::{Request, Response, TraceLine, TraceStarted},
    dataplane::{Dataplane, DataplaneError, TraceSwitch},
    trace::{self, Filter, Names, Record},
};

/// Records waiting for the slowest client; past this, it is told how many it missed.
const BACKLOG: usize = 4096;
/// A trace line the client does not take within this ends its trace.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The attached clients and the program's trace switch.
pub(crate) struct Tracer {
    switch: Mutex<TraceSwitch>,
    clients: Mutex<BTreeMap<u64, Filter>>,
    next: AtomicU64,
    records: broadcast::Sender<Record>,
}

/// Hands the program's records to the tracer's channel; the program logs nothing else.
pub(crate) struct Relay(broadcast::Sender<Record>);

impl log::Log for Relay {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target() == trace::TARGET
    }

    fn log(&self, record: &log::Record<'_>) {
        if record.target() != trace::TARGET {
            return;
        }
        match Record::parse(&record.args().to_string()) {
            // No receiver means the last client just left: nothing to deliver.
            Ok(r) => drop(self.0.send(r)),
            Err(e) => debug!("unreadable trace record: {e}"),
        }
    }

    fn flush(&self) {}
}

impl Tracer {
    /// Takes the program's trace maps; the reader must run for records to arrive.
    pub(crate) fn take(dp: &mut Dataplane) -> Result<(Tracer, EbpfLogger<Relay>), DataplaneError> {
        let (records, _) = broadcast::channel(BACKLOG);
        let (switch, reader) = dp.take_trace(Relay(records.clone()))?;
        let tracer = Tracer {
            switch: Mutex::new(switch),
            clients: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(1),
            records,
        };
        Ok((tracer, reader))
    }

    /// Writes the kernel filter for the clients attached now (off if none), on for a
    /// lease from now.
    fn apply(&self) {
        let control = trace::control(lock(&self.clients).values(), monotonic_ns() + lease_ns());
        let written = lock(&self.switch).set(&control);
        if let Err(e) = written {
            warn!("xlb trace: {e}");
        }
    }

    fn suppressed(&self) -> u64 {
        lock(&self.switch).suppressed().unwrap_or(0)
    }

    fn attach(self: &Arc<Self>, filter: Filter) -> Session {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let records = self.records.subscribe();
        lock(&self.clients).insert(id, filter);
        self.apply();
        Session {
            tracer: Arc::clone(self),
            id,
            records,
        }
    }
}

/// An attached client; dropping it detaches it.
struct Session {
    tracer: Arc<Tracer>,
    id: u64,
    records: broadcast::Receiver<Record>,
}

impl Drop for Session {
    fn drop(&mut self) {
        lock(&self.tracer.clients).remove(&self.id);
        self.tracer.apply();
    }
}

fn lease_ns() -> u64 {
    trace::LEASE.as_nanos() as u64
}

/// `CLOCK_MONOTONIC` in ns, which the program's `bpf_ktime_get_coarse_ns` trails by at
/// most a tick.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec.cast_unsigned() * 1_000_000_000 + ts.tv_nsec.cast_unsigned()
}

/// Reads the program's records as they arrive, until the daemon stops; then turns the
/// trace off.
pub(crate) async fn reader(d: Arc<Shared>, reader: EbpfLogger<Relay>) {
    let mut stop = d.subscribe();
    // SAFETY: the logger owns the ring buffer's fd and keeps it open, unchanged, for as
    // long as it lives, which is as long as the AsyncFd that owns it.
    let registered =
        unsafe { AsyncFd::register_with_interest(reader, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => return warn!("xlb trace is unavailable: polling the record buffer: {e}"),
    };
    loop {
        tokio::select! {
            ready = fd.readable_mut() => match ready {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(e) => return warn!("xlb trace stopped: polling the record buffer: {e}"),
            },
            _ = stopped(&mut stop) => break,
        }
    }
    lock(&d.tracer.clients).clear();
    d.tracer.apply();
}

/// Renews the lease every second while a client is attached.
pub(crate) async fn renewer(d: Arc<Shared>) {
    let mut stop = d.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut stop) => return,
        }
        if !lock(&d.tracer.clients).is_empty() {
            d.tracer.apply();
        }
    }
}

/// The names of the running generation, if the controller's turn comes soon.
async fn names(d: &Shared, wait: Duration) -> Result<Option<Names>, String> {
    let turn = d
        .turn_within(wait)
        .await
        .ok_or("the daemon is busy with a change; try again")?;
    turn.run(|c| c.current().map(Names::of)).await
}

/// Serves one `xlb trace` connection: the response line, then records until the count
/// is reached, the client goes away or the daemon stops.
pub(crate) async fn serve(stream: UnixStream, d: Arc<Shared>, req: Request, user: String) {
    let (rx, mut tx) = stream.into_split();
    let Request::Trace {
        vip,
        backend,
        reasons,
        count,
        rate,
    } = req
    else {
        return;
    };
    let resolved = match names(&d, Duration::from_secs(10)).await {
        Ok(Some(names)) => names
            .filter(vip.as_deref(), backend.as_deref(), &reasons, rate)
            .map(|f| (names, f)),
        Ok(None) => Err("no generation is running: nothing to trace".into()),
        Err(e) => Err(e),
    };
    let (mut names, filter) = match resolved {
        Ok(r) => r,
        Err(e) => {
            write(&mut tx, &Response::error(e)).await;
            return;
        }
    };
    let started = TraceStarted {
        generation: names.generation,
        per_cpu_rate: filter.rate,
    };
    if !write(&mut tx, &Response::data(&started)).await {
        return;
    }
    let what = format!(
        "trace {} {}{}",
        vip.as_deref().unwrap_or("(every VIP)"),
        backend
            .as_deref()
            .map_or(String::new(), |b| format!("backend {b} ")),
        if reasons.is_empty() {
            String::new()
        } else {
            format!("reasons {}", reasons.join(","))
        }
    );
    info!(user, "{what}: started");
    let mut session = d.tracer.attach(filter.clone());
    let mut suppressed = d.tracer.suppressed();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut stop = d.subscribe();
    let mut sent = 0u64;
    let why = loop {
        let line = tokio::select! {
            r = session.records.recv() => match r {
                Ok(r) if filter.matches(&r) => {
                    sent += 1;
                    TraceLine::Record { time_us: now_us(), event: names.event(&r) }
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(n)) => TraceLine::Skipped {
                    records: n,
                    why: "this client read too slowly".into(),
                },
                Err(RecvError::Closed) => break "the daemon stopped tracing".to_string(),
            },
            _ = tick.tick() => {
                let now = d.tracer.suppressed();
                let held = now.saturating_sub(suppressed);
                suppressed = now;
                refresh(&d, &mut names).await;
                if held == 0 {
                    continue;
                }
                TraceLine::Skipped {
                    records: held,
                    why: format!(
                        "held back by the rate bound ({} records/s per CPU, all trace clients)",
                        trace::control(lock(&d.tracer.clients).values(), 0).per_cpu_rate
                    ),
                }
            },
            _ = gone(&rx) => break "the client went away".to_string(),
            _ = stopped(&mut stop) => break "the daemon is stopping".to_string(),
        };
        if !write(&mut tx, &line).await {
            break "the client went away".to_string();
        }
        if count.is_some_and(|c| sent >= c) {
            break format!("{sent} records, as asked");
        }
    };
    drop(session);
    info!(user, "{what}: ended: {why}, {sent} records sent");
    write(&mut tx, &TraceLine::End { why }).await;
}

/// Re-reads the names when another generation is running (sampled each second).
async fn refresh(d: &Shared, names: &mut Names) {
    let running = lock(&d.sample).as_ref().map(|s| s.generation);
    if running.is_some_and(|g| g != names.generation)
        && let Ok(Some(fresh)) = self::names(d, Duration::from_millis(200)).await
    {
        *names = fresh;
    }
}

/// Resolves when the client closes its side (or sends anything: after its request line
/// a trace client sends nothing).
async fn gone(rx: &tokio::net::unix::OwnedReadHalf) {
    let mut buf = [0u8; 64];
    loop {
        if rx.readable().await.is_err() {
            return;
        }
        match rx.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            _ => return,
        }
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Writes one JSON line; false if the client did not take it.
async fn write(tx: &mut tokio::net::unix::OwnedWriteHalf, value: &impl serde::Serialize) -> bool {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, tx.write_all(&line)).await,
        Ok(Ok(()))
    )
}
