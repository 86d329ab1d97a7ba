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

use super::{
    socket::{WRITE_TIMEOUT, line},
    state::{Shared, lock, stopped},
};
use crate::{
    api::{Request, Response, TraceLine, TraceStarted},
    dataplane::{Dataplane, DataplaneError, TraceSwitch},
    trace::{self, Filter, Names, Record},
};

/// Records waiting for the slowest client; past this, it is told how many it missed.
const BACKLOG: usize = 4096;

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
        let control = trace::control(
            lock(&self.clients).values(),
            crate::dataplane::monotonic_ns() + lease_ns(),
        );
        let written = lock(&self.switch).set(&control);
        if let Err(e) = written {
            warn!("xlb trace: {e}");
        }
    }

    /// Clients attached now.
    pub(crate) fn clients(&self) -> usize {
        lock(&self.clients).len()
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

impl Session {
    /// Follows a new filter (the kernel's too).
    fn update(&self, filter: Filter) {
        lock(&self.tracer.clients).insert(self.id, filter);
        self.tracer.apply();
    }
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

/// What a client asked for, by name: resolved again against every new generation.
struct Ask {
    vip: Option<String>,
    backend: Option<String>,
    reasons: Vec<String>,
    rate: Option<u32>,
}

impl Ask {
    fn resolve(&self, names: &Names) -> Result<Filter, String> {
        names.filter(
            self.vip.as_deref(),
            self.backend.as_deref(),
            &self.reasons,
            self.rate,
        )
    }

    fn describe(&self) -> String {
        let mut what = vec![self.vip.clone().unwrap_or_else(|| "every VIP".into())];
        what.extend(self.backend.iter().map(|b| format!("backend {b}")));
        what.extend(self.reasons.iter().map(|r| format!("reason {r}")));
        what.join(", ")
    }
}

/// The running generation's names, if one is running.
fn running_names(d: &Shared) -> Option<Names> {
    d.running.borrow().as_deref().map(Names::of)
}

/// Serves one `xlb trace` connection: the response line, then records until the count
/// is reached, the client goes away, the daemon stops, or a new generation no longer has
/// what the client asked for.
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
    let ask = Ask {
        vip,
        backend,
        reasons,
        rate,
    };
    let resolved = match running_names(&d) {
        Some(names) => ask.resolve(&names).map(|f| (names, f)),
        None => Err("no generation is running: nothing to trace".into()),
    };
    let (mut names, mut filter) = match resolved {
        Ok(r) => r,
        Err(e) => {
            write(&mut tx, &Response::error(e)).await;
            return;
        }
    };
    if count == Some(0) {
        write(
            &mut tx,
            &Response::error(
                "--count 0 would show nothing: leave --count out to trace until interrupted",
            ),
        )
        .await;
        return;
    }
    let started = TraceStarted {
        generation: names.generation,
        per_cpu_rate: filter.rate,
    };
    if !write(&mut tx, &Response::data(&started)).await {
        return;
    }
    let what = format!("trace of {}", ask.describe());
    info!(user, "{what}: started");
    let mut session = d.tracer.attach(filter.clone());
    let mut running = d.running.clone();
    let mut suppressed = d.tracer.suppressed();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    // This client's own bound, over all CPUs: the kernel's is the highest any client
    // asked for.
    let mut window = (tokio::time::Instant::now(), 0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut stop = d.subscribe();
    let mut sent = 0u64;
    let (why, done) = loop {
        let line = tokio::select! {
            r = session.records.recv() => match r {
                Ok(r) if filter.matches(&r) => {
                    if window.0.elapsed() >= Duration::from_secs(1) {
                        window = (tokio::time::Instant::now(), 0, window.2);
                    }
                    if window.1 >= u64::from(filter.rate) * cpus {
                        window.2 += 1;
                        continue;
                    }
                    window.1 += 1;
                    sent += 1;
                    TraceLine::Record { time_us: now_us(), event: names.event(&r) }
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(n)) => TraceLine::Skipped {
                    records: n,
                    why: "this client read too slowly".into(),
                },
                Err(RecvError::Closed) => break ("the daemon stopped tracing".to_string(), false),
            },
            changed = running.changed() => {
                if changed.is_err() {
                    break ("the daemon stopped tracing".to_string(), false);
                }
                let Some(fresh) = running_names(&d) else { continue };
                let generation = fresh.generation;
                names = fresh;
                match ask.resolve(&names) {
                    Ok(f) if f == filter => continue,
                    Ok(f) => {
                        let text = format!("generation {generation}: {}; following it", changes(&filter, &f));
                        session.update(f.clone());
                        filter = f;
                        TraceLine::Note { text }
                    }
                    Err(e) => break (format!("generation {generation}: {e}"), false),
                }
            },
            _ = tick.tick() => {
                let now = d.tracer.suppressed();
                let held = now.saturating_sub(suppressed);
                suppressed = now;
                let own = std::mem::take(&mut window.2);
                if held > 0 {
                    let bound = trace::control(lock(&d.tracer.clients).values(), 0).per_cpu_rate;
                    let kernel = TraceLine::Skipped {
                        records: held,
                        why: format!("held back by the kernel's rate bound ({bound}/s per CPU, the highest any trace client asked for)"),
                    };
                    if !write(&mut tx, &kernel).await {
                        break ("the client went away".to_string(), false);
                    }
                }
                if own == 0 {
                    continue;
                }
                TraceLine::Skipped {
                    records: own,
                    why: format!("over this client's --rate ({}/s per CPU)", filter.rate),
                }
            },
            _ = gone(&rx) => break ("the client went away".to_string(), false),
            _ = stopped(&mut stop) => break ("the daemon is stopping".to_string(), false),
        };
        if !write(&mut tx, &line).await {
            break ("the client went away".to_string(), false);
        }
        if count.is_some_and(|c| sent >= c) {
            break (format!("{} as asked", records(sent)), true);
        }
    };
    drop(session);
    info!(user, "{what}: ended: {why}; {} sent", records(sent));
    write(&mut tx, &TraceLine::End { why, done }).await;
}

/// What a new generation changed in a trace's filter, for its note.
fn changes(old: &Filter, new: &Filter) -> String {
    let mut what = Vec::new();
    if let (Some(o), Some(n)) = (old.vip, new.vip)
        && o != n
    {
        what.push(format!("the VIP is now {n} (was {o})"));
    }
    if old.backend_id != new.backend_id {
        what.push(format!(
            "the backend's id is now {}",
            new.backend_id.map_or("-".into(), |b| b.to_string())
        ));
    }
    if what.is_empty() {
        "the filter changed".into()
    } else {
        what.join(", ")
    }
}

/// "1 record", "2 records".
fn records(n: u64) -> String {
    if n == 1 {
        "1 record".into()
    } else {
        format!("{n} records")
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
    // A line the client does not take within the socket's write timeout ends the trace.
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, tx.write_all(&line(value))).await,
        Ok(Ok(()))
    )
}
